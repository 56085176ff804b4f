"""The hardware description presets, installed as package data: codesign.hw_targets."""
