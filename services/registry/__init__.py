"""Registry service: participants (data holders, data recipients) and the dataset catalogue."""
