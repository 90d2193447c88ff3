' answers:
big = 4611686018427387903
TALK big + 1
TALK big * big
TALK -big - 5
small = 7
TALK small / 2, small \ 2, small MOD 3, -small MOD 3, small MOD -3, -small \ 2
TALK 10 / 5, 2 ^ 10, 2 ^ 70, 1.5 * 2, 0.1 + 0.2
TALK 3 = "3", "abc" = "ABC", 2 < 10, "2" < "10", 1 <> 1.0
x = 2147483647
TALK x * x * x
TALK 9007199254740993 / 1
FOR i = 10 TO 1 STEP -3
  TALK i
NEXT
FOR f = 0 TO 1 STEP 0.25
  TALK f
NEXT
TALK NOT 0, NOT "no", -(3), +"4"
t = 5 > 3
TALK t AND 1, t OR 0, t & "!"
