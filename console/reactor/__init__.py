"""The reactor: rules that turn events into approved actions (``hostbus reactor``)."""
