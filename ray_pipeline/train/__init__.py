"""Distributed training on Ray Train: logistic regression by gradient descent, and XGBoost."""
