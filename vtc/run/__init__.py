"""Run: configuration and presets, the plan (all validation), the engines (local threads, Ray) and batch mode."""
