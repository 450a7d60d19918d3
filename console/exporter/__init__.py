"""The Prometheus exporter (``hostbus exporter``): the fleet's state from events, served
on ``/metrics``."""
