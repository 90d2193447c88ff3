' answers:
list = [1, 2]
list[-2] = "first"
TALK list
list[7] = 3
