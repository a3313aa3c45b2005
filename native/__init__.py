"""Native mode: the compose services as local processes under supervisord (see README.md)."""
