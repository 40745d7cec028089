"""The runners behind `fit`, `predict`, `explain`, `finetune` and `compare`, on top of featurize and
classifiers (imported from their package roots only).

- what every command shares: `layout` (where outputs go under --out), `choices` (the names the CLI
  offers, importing nothing), `splits` (which rows train and which score), `metrics`, `plots` (every
  picture, matplotlib set up once);
- `fit` and `predict`; `explain` (with `heatmaps`, the maps it computes);
- `finetune` (with `finetune_data`: its images and loaders; `unfreeze`: which blocks train;
  `distill`: learning a saved model's probabilities);
- `compare` (with `reuse`: fitted heads kept between runs; `finetuned`: the fine-tuned network as a
  row; `ranking`: the rows scored and ranked; `report`: the files of the report).
"""
