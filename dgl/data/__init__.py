"""Datasets: annotation adapters, downloads with checks, and the synthetic benchmark."""
