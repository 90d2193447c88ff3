' answers: 2 | 7 | no | 7
FUNCTION bump(n)
  n = n + 1
  n = n * 2
  RETURN n
END FUNCTION
people = [NEW OBJECT, NEW OBJECT]
people[0].name = "Bo"
people[1].name = "Ana"
SORT people BY "name"
TALK people[0].name, people[1].name, TRUE, FALSE, NOT TRUE
list = [1]
APPEND list, 2
TALK list
CALL UBOUND(list)
TALK bump(3)
FOR round = 1 TO 2
  HEAR pick AS INTEGER
  SELECT CASE pick
    CASE 1, 2
      TALK "small"
      HEAR again AS BOOLEAN
      TALK "again: " & again
    CASE 7
      TALK "seven"
    CASE ELSE
      TALK "other"
  END SELECT
NEXT
TALK ""
RETURN
TALK "not reached"
