"""Evaluation: metrics computed as the reference harnesses compute them, and the report.

Pure numpy / Python (plus jiwer, whisper_normalizer, scipy, matplotlib): nothing here
imports TensorFlow, Beam, SeqIO or tasks/. The model-facing loop lives in
`model/eval.py`; eval inputs reach it through gin bindings to `tasks/eval_inputs.py`.
"""
