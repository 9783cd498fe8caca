"""The bottom layer every package may import: errors, torch process set-up, progress, config building."""
