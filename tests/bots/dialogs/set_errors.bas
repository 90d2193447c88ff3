' answers:
list = [1, 2]
list[2] = 3
TALK list
text = "abc"
text.size = 3
