"""What the stages share: the event contract and the settings read from `.env`."""
