' answers:
FOR x = 1 TO 2 STEP 0.5
  TALK x
NEXT
s = 0.0
FOR y = 1 TO 2 STEP s
  TALK y
NEXT
