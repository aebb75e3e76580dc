{"command": "status"}
{"command": "sta