"""xpkit, private: see docs/architecture.md."""
