"""Reinforcement learning: the V-MPO loss (vmpo.py), agents whose torso is our decoder
block stack or an LSTM (agent.py), and an on-device trainer over gymnax environments
(train.py; `python -m model.rl --gin_file=gin/rl/...`)."""
