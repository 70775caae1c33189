"""mpota host tools: the `ota` command line, the virtual board and the provisioning station."""
