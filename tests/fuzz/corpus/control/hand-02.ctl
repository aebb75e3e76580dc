{"command": "quarantine.add", "args": {"target": "10.0.0.1"}}


