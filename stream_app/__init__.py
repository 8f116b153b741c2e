"""The stream worker: LTV changes from Kafka to loyalty ranks in the product DB."""
