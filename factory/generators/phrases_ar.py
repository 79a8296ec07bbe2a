"""Arabic (Modern Standard Arabic) phrases for the template generator: openers, connectives, leads and closers.

Written for Arabic, not from the English line by line: greetings and courtesy formulas an Arabic speaker uses with
a coach ("مرحبًا كابتن"، "سؤال سريع")، connectives that refer back the way Arabic does ("بناءً على ما قلته")،
and number phrases that agree with the number (يومين، ٣ أيام). No digits: numbers come from the facts and the user.
"""

from __future__ import annotations

from factory.generators.phrases import Phrases


def days_text(days: int) -> str:
    """"N training days" with the noun agreeing with the number (dual for two, plural for three to ten)."""
    if days == 1:
        return "يوم واحد"
    if days == 2:
        return "يومين"
    return f"{days} أيام"


ARABIC = Phrases(
    openers=(
        "{question}",
        "{question}",
        "مرحبًا! {intro}. {question}",
        "{intro} وأريد أن {goal}. {question}",
        "مرحبًا كابتن، {question}",
        "سؤال سريع: {question}",
        "{question} للتوضيح: {intro}.",
        "{intro}، وهدفي أن {goal}. {question}",
        "السلام عليكم. {question}",
        "هل يمكنني أن أسألك عن شيء؟ {question}",
        "{intro}، ولذلك أريد أن أفهم هذا جيدًا: {question}",
    ),
    connectives=(
        "{question}",
        "شكرًا! {question}",
        "هذا مفيد. {question}",
        "فهمت. {question}",
        "منطقي. {question}",
        "حسنًا، و{question}",
        "سؤال آخر عن {topic}: {question}",
        "بناءً على ما قلته، {question}",
        "ما زلنا في موضوع {topic}: {question}",
        "ذكرتَ {topic} قبل قليل. {question}",
    ),
    turn_leads=("", "", "وأيضًا، ", "في الحقيقة، ", "أمر آخر: ", "هل أسألك عن شيء مختلف؟ ", "بالمناسبة، "),
    instead_questions=("إذن ماذا تقترح بدلًا من ذلك؟", "حسنًا، وما البديل الذي أستطيع فعله؟",
                       "معك حق. فما الطريق الأكثر أمانًا للوصول إلى هدفي؟", "فماذا أفعل إذن؟",
                       "طيب، ماذا كنت ستفعل لو كنت مكاني؟"),
    instead_leads=("هذا ما أنصحك بالتركيز عليه بدلًا من ذلك: {alt}", "طريق أكثر أمانًا: {alt}",
                   "ما ينجح دون تلك المخاطر: {alt}", "بدلًا من ذلك، وجّه جهدك إلى ما يلي: {alt}"),
    acknowledgements=("", "", "", "سؤال جيد.", "سؤال ممتاز.", "يسعدني أن أساعدك.", "بالتأكيد.",
                      "جميل أنك سألت.", "من الحكمة أن تتأكد من هذا."),
    follow_acks=("", "", "سؤال متابعة جيد.", "بالتأكيد.", "طبعًا.", "نعم، نقطة مهمة."),
    safety_leads=("تنبيه: {note}", "مهم: {note}", "ضع في اعتبارك: {note}", "ملاحظة للسلامة: {note}"),
    closers=("", "", "", "", "أخبرني كيف تسير الأمور.", "هل تريد أن أدرج هذا في خطتك الأسبوعية؟",
             "لا تتردد في السؤال إن كان هناك شيء غير واضح.", "أطلعني على تقدمك."),
    personal_leads=("بوزنك البالغ {mass} كغ، يعني ذلك نحو {number}.",
                    "عند {mass} كغ، يصبح الرقم تقريبًا {number}.",
                    "في حالتك، مع وزن {mass} كغ، استهدف نحو {number}."),
    days_leads=("إذا وزعت ذلك على أيام تدريبك ({days_text} في الأسبوع)، فهذا نحو {number} في الجلسة.",
                "مع التدريب {days_text} في الأسبوع، يصبح ذلك تقريبًا {number} لكل جلسة.",
                "على مدى {days_text} أسبوعيًا، خطط لنحو {number} في كل مرة."),
    profile_notes={},  # a persona's own profile_notes (recipe translations) say it in full
    topic_words={
        "form_cues": "الأداء الصحيح", "common_mistakes": "أخطاء الأداء",
        "progressions_regressions": "التدرج في التمارين",
        "equipment_alternatives": "المعدات", "sets_reps_rest": "المجموعات والراحة", "splits": "تقسيم التدريب",
        "progressive_overload": "التدرج في الحمل", "deloads": "أسابيع التخفيف", "macros": "التغذية",
        "meal_timing": "توقيت الوجبات", "supplements": "المكملات", "hydration": "شرب السوائل", "sleep": "النوم",
        "active_recovery": "التعافي", "soreness": "ألم العضلات", "injury_prevention": "الوقاية من الإصابات",
        "consistency": "الاستمرارية", "plateaus": "توقف التقدم", "goal_setting": "الأهداف", "habits": "العادات",
        "beginners": "البدايات", "older_adults": "التدريب في سن متقدمة", "women": "تدريب المرأة",
        "return_after_injury": "العودة بعد الإصابة",
    },
    mass_detail="وزني {mass} كغ.",
    days_detail="أستطيع التدرب {days_text} في الأسبوع.",
    mass_said="{mass} كغ",
    days_said="{days_text} في الأسبوع",
    default_topic="هذا الموضوع",
)
