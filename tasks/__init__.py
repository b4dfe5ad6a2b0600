"""The lifecycle steps of graftline as plain, typed functions (no Prefect, no MLflow inside)."""
