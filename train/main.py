"""Entry point of `python -m train` (intentionally short: the logic lives in gin_jax.cli).

python -m train                       # the embedded demo (synthetic data)
python -m train --train day_0.gz --format criteo --preset criteo_paper
python -m train --preset tiny --model.num_subspaces=4 --train.epochs=1
python -m train --config study/dcnv2.yaml --train.seed=1
"""

from gin_jax.cli import main

if __name__ == "__main__":
  main()
