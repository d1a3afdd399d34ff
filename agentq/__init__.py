"""AgentQ: a self-improving code-repair agent (MCTS + AI self-critique + DPO)."""

__version__ = "0.1.0"
