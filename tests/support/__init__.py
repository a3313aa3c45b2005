"""What the test tiers and the benchmarks share: events built on the contract (events.py), Hypothesis
strategies for its edges (strategies.py), and a throwaway native stack on free ports (ephemeral.py)."""
