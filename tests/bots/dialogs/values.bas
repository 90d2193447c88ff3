' answers: Ana Lima | yes
people = NEW ARRAY
p = NEW OBJECT
p.name = "Ana"
p.age = 30
people[0] = p
q = NEW OBJECT
q.Name = "Bo"
q.age = 25
people[UBOUND(people)] = q
FOR EACH person IN people
  TALK person.name & " is " & person.age
NEXT
TALK UBOUND(people), people.length
TALK people
list = [3, 1, 2]
list[1] = "one"
TALK list, list[0] + list[2], MID("hello world", 7)
TALK "sum: ${list[0] + list[2]} of ${UBOUND(list)}"
HEAR name AS NAME
TALK "Hi ${name}!"
HEAR ok AS BOOLEAN
IF ok THEN
  TALK "ok"
END IF
blank = NEW OBJECT
TALK blank.missing, nothing, UBOUND(nothing)
x = [1, 2]
TALK x[5]
TALK "not reached"
