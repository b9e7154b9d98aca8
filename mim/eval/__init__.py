"""Evaluations of a student encoder: fine-tuning, linear probe, k-NN; and of a teacher: token diversity."""
