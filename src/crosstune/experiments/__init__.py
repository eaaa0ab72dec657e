"""Many runs of the pipeline as DVC experiments: grid sweeps (`crosstune sweep`) and Optuna studies (`crosstune
tune`, with its per-epoch pruning reporter in trial_pruning.py), read back and ranked with stock `dvc exp show`,
each trial one a user can `dvc exp apply`, rerun or push."""
