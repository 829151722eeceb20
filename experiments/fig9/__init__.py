"""Figure 9: prefill colocation (SM share curves and the planner)."""
