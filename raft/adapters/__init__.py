"""Adapters that implement the ports: in memory, Azure Table Storage, Azure Service Bus."""
