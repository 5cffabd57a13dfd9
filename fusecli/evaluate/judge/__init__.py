"""`evaluate.backend: judge`: MT-Bench-style judged evaluation (questions, answers, prompts, grading, scores)."""
