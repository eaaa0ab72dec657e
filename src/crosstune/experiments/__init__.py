"""Many runs of the pipeline as DVC experiments: grid sweeps (`crosstune sweep`), read back and ranked
with stock `dvc exp show`, each trial one a user can `dvc exp apply`, rerun or push."""
