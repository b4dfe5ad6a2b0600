"""Fine-tuning recipes: one module per training method, each with the same life cycle.

`tasks/train/finetune.py` holds the table (`RECIPES`) and picks the first recipe whose `applies`
holds for the settings; adding a method is one module here and one entry there. Every recipe
follows `setup -> train -> save` (saving also clears the checkpoints the saved model supersedes),
split into small private steps, and its docstring says what it supports and what it refuses.

| module          | recipe         | trains                                                              |
|-----------------|----------------|---------------------------------------------------------------------|
| supervised.py   | Supervised     | one training on the labelled rows: full, linear-probe or LoRA       |
| lp_ft.py        | ProbeThenTune  | a linear probe, then every weight from the probed head              |
| private.py      | Private        | DP-SGD within (epsilon, delta) (engine/private.py)                  |
| adaptation.py   | Adaptation     | the source recipe with a target MLM loss, then self-training rounds |
| distributed.py  | Distributed    | the chosen recipe in several torchrun processes                     |
| search.py       | Search         | a hyper-parameter search whose best trial is the teacher            |

base.py holds what every recipe shares (the job, the life cycle, the table's type), result.py the
result and what it logs, common.py the model and data steps the recipes share.
"""
