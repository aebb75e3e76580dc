{"command": "status"}
