"""Fraud scoring with a stream–table join, delayed labels, and a live model rollout."""
