"""Tenancy: customers, instances, subscription tiers and quotas, API keys, tokens, audit."""
