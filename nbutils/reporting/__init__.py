"""What a person looks at: figures, image grids, and the run's HTML report and index page."""
