{"command": "boom"}
{"command": 1}
[1]
{"args": []}
