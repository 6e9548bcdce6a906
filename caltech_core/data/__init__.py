"""The dataset: split lists, summaries and download, the decoded-image cache, batched transforms."""
