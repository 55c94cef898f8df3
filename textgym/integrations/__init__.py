"""textgym tasks in other people's training stacks (each module imports its stack only when used).

`textgym.integrations.trl`: a task as a dataset and reward functions for TRL's `GRPOTrainer`.
"""
