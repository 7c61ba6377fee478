"""The training algorithms built on the one trainer (QuickNet, end-to-end, SDN, fine-tuning) and inference."""
