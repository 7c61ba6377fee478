"""The training algorithms built on the one trainer (QuickNet: sequential, decoupled or pipelined; end-to-end;
SDN; fine-tuning) and early-exit inference."""
