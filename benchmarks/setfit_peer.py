"""SetFit (Tunstall et al. 2022) as a peer of GAN-BERT, run in SetFit's own venv (it needs transformers 5, while
jaxtextgan's parity tests pin 4.x), offline, on a local sentence-transformers directory.

  python benchmarks/setfit_peer.py request.json answer.json

request.json: {"model_dir", "train_texts", "train_labels", "test_texts", "steps", "batch_size", "max_len", "seed"},
and optionally "head_cs" and "folds": then the head's C is chosen from head_cs by stratified `folds`-fold
cross-validation on the labeled rows' SetFit embeddings (as jaxtextgan's frozen-lr chooses its C), instead of
scikit-learn's default C = 1. answer.json: {"predictions": [int, ...]} for test_texts, and "C" when chosen.
Called by `jaxtextgan.tasks.ganbert_peers.setfit`.
SetFit's venv (README, "GAN-BERT against the alternatives"):
  python3 -m venv ~/setfit-venv && ~/setfit-venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
  ~/setfit-venv/bin/pip install setfit scikit-learn
"""

import json
import sys
import tempfile
import warnings


def main(request_path: str, answer_path: str) -> None:
  from datasets import Dataset
  from setfit import SetFitModel, Trainer, TrainingArguments

  req = json.loads(open(request_path, encoding="utf-8").read())
  model = SetFitModel.from_pretrained(req["model_dir"], local_files_only=True)
  model.model_body.max_seq_length = int(req["max_len"])
  train = Dataset.from_dict({"text": req["train_texts"], "label": req["train_labels"]})
  with tempfile.TemporaryDirectory() as tmp:  # SetFit's Trainer writes checkpoints; keep them out of the caller's cwd
    args = TrainingArguments(output_dir=tmp, save_strategy="no", batch_size=int(req["batch_size"]),
                             max_steps=int(req["steps"]), num_epochs=1, seed=int(req["seed"]), report_to="none",
                             show_progress_bar=False)
    Trainer(model=model, args=args, train_dataset=train).train()
  answer = {}
  if req.get("head_cs"):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    search = GridSearchCV(LogisticRegression(max_iter=2000), {"C": list(req["head_cs"])}, scoring="accuracy",
                          cv=StratifiedKFold(int(req["folds"]), shuffle=True, random_state=int(req["seed"])))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # classes smaller than k: folds lack them
      search.fit(model.encode(req["train_texts"], batch_size=64), req["train_labels"])
    model.model_head, answer["C"] = search.best_estimator_, float(search.best_params_["C"])
  answer["predictions"] = [int(p) for p in model.predict(req["test_texts"], batch_size=64)]
  with open(answer_path, "w", encoding="utf-8") as f:
    json.dump(answer, f)


if __name__ == "__main__":
  main(*sys.argv[1:3])
