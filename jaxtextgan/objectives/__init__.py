"""Training objectives: each module has init_state, train_step and eval_step."""
