"""What a tuned LiT model does with images and text: zero-shot classify, score and rank."""
