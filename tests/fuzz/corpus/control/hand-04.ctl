{"command": "echo", "args": {"x": "\u0000\ud800"}}
