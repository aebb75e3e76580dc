{"command": "echo", "args": {"target": "desktop", "duration": 600}}
{"command": "status"}
