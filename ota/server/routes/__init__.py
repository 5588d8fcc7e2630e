"""HTTP routes of the OTA server, one thin module per resource."""
