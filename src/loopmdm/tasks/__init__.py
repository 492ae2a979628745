"""Built-in tasks with their own data generators and scoring (for example, 9x9 Sudoku)."""
