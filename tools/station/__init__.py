"""The factory provisioning station (`ota provision`): identify, key, write, register, log."""
