"""What happens around every call: credentials, quotas, metrics, audit and error mapping."""
