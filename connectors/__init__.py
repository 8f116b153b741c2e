"""How changes leave the source: the Debezium connector and the ClickHouse intake."""
